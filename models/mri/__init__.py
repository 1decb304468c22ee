"""MR volume quality (MIQA, paper 002): phantoms with TorchIO artifacts, the 3-D network, the pack."""
