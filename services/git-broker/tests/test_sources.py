"""Reading a mission's repository reference: local paths, URLs and what is refused."""

from __future__ import annotations

import pytest

from aether_git_broker.sources import (
    InvalidRepository,
    LocalSource,
    RemoteSource,
    parse_repository,
    redact,
)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("/home/me/repo", "/home/me/repo"),
        ("/home/me/My Projects/app", "/home/me/My Projects/app"),
        ("/home/me/repo/", "/home/me/repo"),
        ("file:///home/me/repo", "/home/me/repo"),
    ],
)
def test_local_repositories_are_absolute_paths(text: str, path: str) -> None:
    assert parse_repository(text) == LocalSource(path)


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
        (
            "https://x-access-token:s3cr3t@github.com/org/repo.git",
            "https://github.com/org/repo.git",
        ),
        ("http://10.0.0.5:8080/repo", "http://10.0.0.5:8080/repo"),
        ("ssh://git@host.example:2222/srv/repo.git", "ssh://git@host.example:2222/srv/repo.git"),
        ("git://host/repo", "git://host/repo"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
    ],
)
def test_remote_repositories_keep_their_url_and_hide_credentials(text: str, display: str) -> None:
    source = parse_repository(text)
    assert isinstance(source, RemoteSource)
    assert source.url == text
    assert source.display == display
    assert "s3cr3t" not in source.directory


def test_one_clone_per_repository_whatever_the_credentials() -> None:
    a = parse_repository("https://a:one@github.com/org/repo.git")
    b = parse_repository("https://b:two@github.com/org/repo.git")
    c = parse_repository("https://github.com/org/other.git")
    assert isinstance(a, RemoteSource) and isinstance(b, RemoteSource)
    assert isinstance(c, RemoteSource)
    assert a.directory == b.directory != c.directory
    assert a.directory.startswith("repo-")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no repository"),
        ("   ", "no repository"),
        ("relative/dir", "not an absolute path"),
        ("./repo", "not an absolute path"),
        ("/srv/repos/../../etc", "'..'"),
        ("/srv/repo\n/other", "control character"),
        ("/srv/repo\x00", "control character"),
        (" /srv/repo", "white space"),
        ("--upload-pack=touch /tmp/pwned", "starts with '-'"),
        ("-oProxyCommand=sh", "starts with '-'"),
        ("ext::sh -c touch% /tmp/pwned", "not an absolute path"),
        ("fd::17", "not an absolute path"),
        ("ftp://host/repo", "scheme 'ftp' is not supported"),
        ("file://relative/repo", "not an absolute path"),
        ("https://host/$(id).git", "'$'"),
        ("https://host/`id`.git", "'`'"),
        ("https://host/repo;rm -rf ~", "';'"),
        ("https://host/repo'quote", '"\'"'),
        ("https://host/a/../b", "'..'"),
        ("https://host/repo?upload-pack=x", "query"),
        ("https://host", "no path"),
        ("https:///repo", "no host"),
        ("ssh://-oProxyCommand=touch%20x/repo", "invalid host"),
        ("ssh://user;id@host/repo", "invalid user name"),
        ("ssh://user:pw@host/repo", "password in a ssh URL"),
        ("-user@host:repo", "starts with '-'"),
        ("user@-host:repo", "invalid host"),
        ("user@host:repo$(id)", "'$'"),
        ("https://ho$t/repo", "invalid host"),
        ("https://host:99999/repo", "not a valid URL"),
    ],
)
def test_references_that_could_inject_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidRepository) as caught:
        parse_repository(text)
    assert reason in str(caught.value)


def test_roots_confine_local_repositories() -> None:
    roots = ("/srv/repos",)
    assert parse_repository("/srv/repos/app", roots) == LocalSource("/srv/repos/app")
    for outside in ("/srv/repos-evil/app", "/etc", "/srv"):
        with pytest.raises(InvalidRepository, match="outside the directories"):
            parse_repository(outside, roots)


def test_redact_hides_passwords_in_any_url_in_a_text() -> None:
    text = "could not fetch https://bot:tok3n@host/repo.git and http://u:p@h/x"
    assert redact(text) == "could not fetch https://bot:***@host/repo.git and http://u:***@h/x"


def test_a_refused_url_does_not_repeat_its_password() -> None:
    with pytest.raises(InvalidRepository) as caught:
        parse_repository("https://bot:hunter2@host/repo?x=1")
    assert "hunter2" not in str(caught.value)
    assert "bot:***@host" in str(caught.value)
