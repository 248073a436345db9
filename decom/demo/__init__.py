"""A demo legacy EDM (a small ministry's document flow) to try decom on: see `decom.demo.generator`."""
