"""BasicSR's log messages in a test, in-process."""
import logging


class BasicsrLog(list):
    """The messages of BasicSR's logger (``basicsr``) at INFO and above while installed, as a list of strings.

    A handler on that logger itself: ``get_root_logger`` turns its propagation off, so pytest's ``caplog`` (on the
    root logger) misses them once any earlier test has set it up; without a log file it also leaves its level unset
    (WARNING), so the level is INFO while installed.
    """

    def __enter__(self):
        self.logger, self.handler = logging.getLogger('basicsr'), logging.Handler()
        self.handler.emit = lambda record: self.append(record.getMessage())
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
