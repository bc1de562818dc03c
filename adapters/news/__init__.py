"""News feeds: Marketaux (per symbol), Tiingo (broad), FNSPID CSV and SemEval headline files.

Every source normalises into :class:`~tapeline.schemas.events.NewsItem` on ``<prefix>.news.<provider>``;
:mod:`.dedup` drops the same story from a second provider, and :mod:`.feed` runs the active set.
"""
