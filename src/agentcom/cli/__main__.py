"""``python -m agentcom.cli``: the ``agentcom`` command."""

import sys

from agentcom.cli import main

sys.exit(main())
