import sys

from training_ext.eval.runner import main

if __name__ == "__main__":
    main(sys.argv[1:])
