"""Shareable views: what a link holds, and what it opens."""

from webapp.ui.links import View, embed_snippet, parse_view, view_url


def test_a_view_round_trips_through_its_url():
    view = View(
        collection="shapes", tab="composed", ref="test-0000-img0", text="make it blue & big"
    )
    url = view_url("http://museum.example/search/?old=1#top", view)
    assert url == (
        "http://museum.example/search/?collection=shapes&tab=composed&ref=test-0000-img0"
        "&text=make+it+blue+%26+big"
    )
    from urllib.parse import parse_qsl, urlsplit

    assert parse_view(dict(parse_qsl(urlsplit(url).query))) == view


def test_a_link_holds_only_its_own_tab_fields():
    view = View(collection="shapes", tab="text", q="a red circle", ref="x", gallery_page="3")
    assert view_url("/", view) == "/?collection=shapes&tab=text&q=a+red+circle"
    # an uploaded reference cannot go into a link, so neither does the change asked of it
    upload = View(collection="shapes", tab="composed", text="make it blue", method="sum")
    assert view_url("/", upload) == "/?collection=shapes&tab=composed"


def test_a_link_never_uses_gradios_own_page_parameter():
    """`?page=1` made Gradio answer 500 (it names a page of a multipage app): the address the
    gallery wrote broke every reload."""
    url = view_url("/", View(tab="gallery", gallery_page="2"))
    assert url == "/?tab=gallery&gallery_page=2" and "&page=" not in url


def test_a_link_without_a_tab_opens_the_tab_its_fields_belong_to():
    assert parse_view({"q": "a dog", "collection": "noisyart"}).tab == "text"
    assert parse_view({"ref": "x", "text": "bluer"}).tab == "composed"
    assert parse_view({}).tab == "gallery"


def test_odd_links_fall_back_instead_of_failing():
    view = parse_view({"tab": "admin", "gallery_page": "two", "q": "x" * 2000})
    assert view.tab == "text" and view.gallery_page == "" and len(view.q) == 500
    assert not View(tab="text").wants_search() and View(tab="text", q="a dog").wants_search()


def test_the_embed_snippet_escapes_the_address():
    snippet = embed_snippet('http://x/?q="><script>')
    assert snippet.startswith('<iframe src="http://x/?q=&quot;&gt;&lt;script&gt;"')
    assert "<script>" not in snippet
