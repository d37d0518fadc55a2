"""Multiple choice is refused: its inputs are (batch, choices, tokens), which calibration, pruning checks and
export, all written for (batch, tokens), do not take."""
REFUSED = {"ForMultipleChoice": "a multiple-choice model, whose inputs are (batch, choices, tokens), which "
                                "deepcuts-fast's calibration and export do not take"}
