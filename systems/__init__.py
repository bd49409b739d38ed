"""The four mini-systems of the casebook: miniflow, miniclipper, miniansor, minips."""
