"""The README's first command: TULIP end to end on an embedded toy long-caption problem (colour-block grids)."""
