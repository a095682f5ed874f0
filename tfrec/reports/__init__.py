"""Human-readable reports of a run: Markdown and self-contained HTML with PNG charts, and the summary printed in the terminal."""
from tfrec.reports.search import summary_table, write_search_report

__all__ = ["summary_table", "write_search_report"]
