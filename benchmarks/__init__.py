"""The project's benchmark: the predictor measured against the model's own limit (issues #8 and #4)."""
