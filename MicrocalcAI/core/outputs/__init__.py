"""Writers (and readers) of the result files: findings JSON, overlay PNG, batch CSV tables."""
