import sys

from hedgerow.streams import cli

sys.exit(cli.main())
