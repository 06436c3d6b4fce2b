"""Running cells: the executor spawns workers, the orchestrator classifies and stores what they return."""
