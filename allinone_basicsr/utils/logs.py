"""BasicSR's logger pointed at a file for a while (tools that run pipelines in their own process: the table's smoke
runs, the GPU check), so the console keeps the tool's own lines."""
import contextlib
import logging


@contextlib.contextmanager
def basicsr_log_to(log_file):
    """BasicSR's logger writes to ``log_file`` only (not the console) while active; restored afterwards."""
    from basicsr.utils import logger as basicsr_logger
    logger = logging.getLogger('basicsr')
    saved = (list(logger.handlers), logger.level, logger.propagate, 'basicsr' in basicsr_logger.initialized_logger)
    for handler in saved[0]:
        logger.removeHandler(handler)
    handler = logging.FileHandler(log_file, 'a')
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    basicsr_logger.initialized_logger['basicsr'] = True
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        for h in saved[0]:
            logger.addHandler(h)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        if not saved[3]:
            basicsr_logger.initialized_logger.pop('basicsr', None)
