"""The Shapes world: a procedurally generated collection whose ground truth is known exactly."""
