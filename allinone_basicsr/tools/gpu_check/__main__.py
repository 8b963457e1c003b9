"""``python -m allinone_basicsr.tools.gpu_check``."""
from allinone_basicsr.tools.gpu_check.cli import cli

cli()
