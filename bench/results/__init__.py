"""Results: the registry (schema I/O), measured entries, leaderboard, statistics, comparison, plots, paper import and hub export."""
