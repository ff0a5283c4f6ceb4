"""Safe rollouts of adapter versions: canary and shadow, promoted or rolled back by gates.

The path of a request of a bare adapter name through a rollout (docs/rollout.md):

1. `server.catalog.ModelCatalog.resolve` reads the name's active rollout from the registry
   database (`adapters.rollouts`), so every replica sees the same one, and
   `RolloutMonitor.track` (`tracker.py`) gives it the rollout's tracker in this process.
2. `routing.py`: a canary sends the request to the candidate when the request id's bucket is
   below the percent; a shadow rollout answers with the current version and names the
   candidate for a copy.
3. `server.generation` records the answer's outcome (`stats.Outcome`: latency, validity,
   labels, error) with the tracker, and for a shadow rollout runs the copy in the background,
   bounded, and records its agreement.
4. `stats.py` turns the outcomes into the comparison `gates.Figures`; `gates.py` judges them
   once both versions reached the minimum; the tracker commits the decision to the database
   off the event loop, where the rollout ends promoted or rolled back.

`plan.py` validates a request to start one, for HTTP and gRPC alike.
"""
