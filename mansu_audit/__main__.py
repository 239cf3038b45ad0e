import sys

from mansu_audit.cli import main

sys.exit(main())
