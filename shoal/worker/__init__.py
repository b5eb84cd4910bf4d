"""The worker agent: join, session with a manager, task executor, runtimes."""
