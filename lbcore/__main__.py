import sys

from lbcore.cli.main import main

sys.exit(main())
