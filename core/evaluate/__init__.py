"""Evaluate: ask models, under decoding settings, the questions of a set; score the answers the way the lab did.

  plan        EvalPlan (models × settings × question set), cells, decoding per setting
  job         the job: every missing answer, then held-out loss and the automatic judge (resumable)
  answers     answers.jsonl lines and which cells are done
  questions   question sets (bundled and user-made)
  scoring     the 20-point rubric, human (blind) scores, summaries
  judge       an automatic judge model's rubric scores, labelled as such
  perplexity  held-out loss / perplexity per model
"""
