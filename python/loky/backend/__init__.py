"""Process-management helpers shared by the executors: contexts, pickling, utilities."""
