"""The subscribers' side: the ward dashboard, ``tail`` and the one-line summary they share."""
