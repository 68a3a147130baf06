import sys

from farmedge.cli import main

sys.exit(main())
