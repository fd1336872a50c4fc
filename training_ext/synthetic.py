"""``python -m training_ext.synthetic``: write the demo's colour-grid long-caption dataset (training_ext.demo.colour_grids).

An entry point of its own because the demo and the README invoke it by this name; the code lives with the demo.
"""
import sys

from training_ext.demo.colour_grids import main

if __name__ == "__main__":
    sys.exit(main())
