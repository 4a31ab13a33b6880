"""Inference methods behind one interface (NUTS today), with the starts they use."""
