import sys

from keyservice.cli import main

sys.exit(main())
