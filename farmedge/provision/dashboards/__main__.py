import sys

from farmedge.provision.dashboards import main

sys.exit(main())
