import sys

from doodle_rnn.cli import main

sys.exit(main())
