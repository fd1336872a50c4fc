import sys

from training_ext.demo.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
