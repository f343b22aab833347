from pipeline.run.report import summary_lines, summary_markdown

MANIFEST = {
    "output": "out/docs", "model": "text-embedding-3-small", "provider": "openai", "dimensions": 1536,
    "stats": {
        "rows": 3_773, "unchanged_rows": 0, "reused_rows": 0, "null_texts": 415, "distinct_texts": 1_842, "chunks": 2_025,
        "cache_hits": 25, "embedded_chunks": 2_000, "embedded_tokens": 103_311, "requests": 9, "retries": {"429": 2, "server error": 1},
        "rate_limited": 2, "timed_out_tokens": 0, "cost_usd": 0.00206622, "seconds": 12.25,
    },
}


def test_the_summary_names_every_figure_an_operator_asks_for():
    text = "\n".join(summary_lines(MANIFEST))
    for fact in ("3,773 (0 in unchanged files, 0 equal to the last output, 415 blank)", "1,842 in 2,025 chunks", "25 chunks",
                 "2,000 chunks, 103,311 tokens in 9 requests", "429 2, server error 1; 429s 2", "$0.002066", "12.2", "out/docs (text-embedding-3-small via openai, 1536 dims)"):
        assert fact in text


def test_the_markdown_summary_is_a_table_of_the_same_figures():
    markdown = summary_markdown(MANIFEST)
    assert markdown.startswith("# embedpipe run") and "| cost | $0.002066 |" in markdown


def test_bad_cache_entries_get_a_line_only_when_there_were_some():
    assert not any("bad in cache" in line for line in summary_lines(MANIFEST))  # a manifest from before the count
    bad = {**MANIFEST, "stats": {**MANIFEST["stats"], "bad_cache_entries": 3}}
    lines = summary_lines(bad)
    assert lines[lines.index("  cache hits     25 chunks") + 1] == (
        "  bad in cache   3 unusable entries (not finite, zero, wrong size, not bytes): embedded again"
    )
    assert "| bad in cache | 3 unusable entries" in summary_markdown(bad)
    none = {**MANIFEST, "stats": {**MANIFEST["stats"], "bad_cache_entries": 0}}
    assert not any("bad in cache" in line for line in summary_lines(none))
