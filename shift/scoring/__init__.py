"""Pure maths of ranking: proxy scores, transferability estimators, strategies, meta tables."""
