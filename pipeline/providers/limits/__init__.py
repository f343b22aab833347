"""Rate limits as the server enforces them: budgets learned from headers and 429s, spent and no more."""
