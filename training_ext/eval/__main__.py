import sys

from training_ext.eval.options import build_parser

if __name__ == "__main__":
    build_parser().parse_args(sys.argv[1:])  # --help and flag errors answer before torch and open_clip load
    from training_ext.eval.runner import main
    main()  # argv from sys.argv, so results.json records the command line
