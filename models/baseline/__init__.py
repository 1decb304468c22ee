"""The torch baselines the worker is measured against: the ML side (torch allowed), run by
``edge-worker bench`` and the GPU proof in processes of their own; the worker never imports them."""
