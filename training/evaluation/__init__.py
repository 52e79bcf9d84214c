"""Scoring a history as the server would, fraud metrics, the handbook backtest, plots."""
