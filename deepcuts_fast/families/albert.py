"""ALBERT: refused. Its encoder layers share one set of weights (cross-layer parameter sharing), so removing a
head or FFN neuron from one layer would remove it from all, and per-layer widths cannot exist."""

REFUSED = {"albert": "its layers share one set of weights (cross-layer parameter sharing), so removing a head or FFN "
                     "neuron from one layer removes it from all of them; per-layer pruning does not apply"}
