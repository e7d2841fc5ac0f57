"""Chat: transcripts with lineage, compare grids with blind votes, and the `python -m core.chat` CLI.

  transcripts  chats on disk (model, settings and lineage), reopen, votes on blind comparisons
  compare      one prompt to a grid of model × decoding-setting cells
Models, settings and engines belong to core.inference (shared with Evaluate and the API server).
"""
