"""The engine side of the server: one process per device that owns the model.

Data flow (one engine shown; a pool has one per device)::

    web worker (slot k)                          engine process
    ───────────────────                          ──────────────
    tokenize, create Segment ──Job──> requests ──> reader thread: attach Segment,
      (ids in shared memory)          (pipe)        split into Items
                                                    main loop: plan_batch -> forward
                                                    -> write vectors into Segment
    listener thread <──Done/Failed── slot k pipe <─ (one small message per job)
    read vectors, unlink Segment

Only small pickled dataclasses (``protocol``) cross the pipes; arrays live in
shared memory (``segment``), created and unlinked by the web worker that owns the
request. A score job (``protocol.ScoreJob``: a query and its documents) takes the
same path, but the engine keeps its vectors (``score_job``) and writes only a table
of scores (``scoring``), a row per document. The master process (``pool``) creates
the pipes and shared counters, starts, supervises and stops the engines.
"""
