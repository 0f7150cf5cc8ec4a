"""One module per `doodle` subcommand (see doodle_rnn.cli)."""
