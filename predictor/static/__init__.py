"""Static files served by the predictor (package data: viewer.html)."""
