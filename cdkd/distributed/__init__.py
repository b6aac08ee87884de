"""Ray placement of the engine: teacher actors, Ray Train workers, the job driver. Imports ray; `cdkd` does not."""
