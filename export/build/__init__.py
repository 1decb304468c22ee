"""``edge-export build``: recipe + data folder + labels file -> trained, evaluated pack."""
