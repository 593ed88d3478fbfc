"""Full-text search over messages, with each database's own engine, kept in step by
triggers in the transaction that stores a message or its attachment; the messages already
stored are indexed here.

Both index a message's text and its file's name in messaging.search.index_form (NFKD,
accents and Hebrew and Arabic vowel marks removed, ß as ss), and queries are put in the
same form, so that a word is found however its marks were typed.

- SQLite: the FTS5 table messaging_message_fts (rowid = message id; columns text, the
  file's name, and the owner as a token "o<user id>" that every query ANDs in, so that
  a search walks only its owner's matches), tokenizer unicode61 with letters, digits and marks as word characters,
  prefix indexes for 2 and 3 characters (the last word is matched as a prefix as people
  type). The triggers call p2p_search_fold(), index_form registered on every connection
  (messaging.apps): a write to messaging_message outside Django fails with "no such
  function".
- PostgreSQL: the table messaging_messagesearch (the MessageSearch model) holds a tsvector
  per message in the text search configuration p2p_search (unaccent, then simple: no
  stemming and no stop words, so every language is treated alike), under a GIN index;
  p2p_search_fold() is index_form in SQL. unaccent is a trusted extension: the database's
  owner may create it.

Careful: when a later migration makes Django rebuild messaging_message or
messaging_attachment on SQLite (most AlterField), SQLite drops their triggers with the old
table; tests/test_search.py fails then, and that migration must create them again.
"""

import django.contrib.postgres.search
import django.db.models.deletion
from django.db import migrations, models

SQLITE_FORWARD = [
    """
    CREATE VIRTUAL TABLE messaging_message_fts USING fts5(
        text, name, owner,
        tokenize = "unicode61 remove_diacritics 2 categories 'L* N* Co M*'",
        prefix = '2 3'
    )
    """,
    """
    CREATE TRIGGER messaging_message_fts_insert AFTER INSERT ON messaging_message BEGIN
        INSERT INTO messaging_message_fts (rowid, text, name, owner)
        VALUES (new.id, p2p_search_fold(new.text), '', 'o' || new.owner_id);
    END
    """,
    """
    CREATE TRIGGER messaging_message_fts_update AFTER UPDATE OF text ON messaging_message
    BEGIN
        UPDATE messaging_message_fts SET text = p2p_search_fold(new.text) WHERE rowid = new.id;
    END
    """,
    """
    CREATE TRIGGER messaging_message_fts_delete AFTER DELETE ON messaging_message BEGIN
        DELETE FROM messaging_message_fts WHERE rowid = old.id;
    END
    """,
    """
    CREATE TRIGGER messaging_attachment_fts_insert AFTER INSERT ON messaging_attachment
    BEGIN
        UPDATE messaging_message_fts SET name = p2p_search_fold(new.name)
         WHERE rowid = new.message_id;
    END
    """,
    """
    CREATE TRIGGER messaging_attachment_fts_update AFTER UPDATE OF name ON messaging_attachment
    BEGIN
        UPDATE messaging_message_fts SET name = p2p_search_fold(new.name)
         WHERE rowid = new.message_id;
    END
    """,
    """
    INSERT INTO messaging_message_fts (rowid, text, name, owner)
    SELECT m.id, p2p_search_fold(m.text), p2p_search_fold(COALESCE(a.name, '')),
           'o' || m.owner_id
      FROM messaging_message m LEFT JOIN messaging_attachment a ON a.message_id = m.id
    """,
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS messaging_attachment_fts_update",
    "DROP TRIGGER IF EXISTS messaging_attachment_fts_insert",
    "DROP TRIGGER IF EXISTS messaging_message_fts_delete",
    "DROP TRIGGER IF EXISTS messaging_message_fts_update",
    "DROP TRIGGER IF EXISTS messaging_message_fts_insert",
    "DROP TABLE IF EXISTS messaging_message_fts",
]

POSTGRES_FORWARD = [
    "CREATE EXTENSION IF NOT EXISTS unaccent",
    "CREATE TEXT SEARCH CONFIGURATION p2p_search (COPY = pg_catalog.simple)",
    """
    ALTER TEXT SEARCH CONFIGURATION p2p_search
        ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple
    """,
    # messaging.search.index_form in SQL: NFKD, its MARKS and FORMAT_CHARS removed, its
    # LETTERS mapped; and ASCII punctuation as spaces, since PostgreSQL's parser would
    # keep "q3-report.pdf" or "a_b" whole where the query's words are split.
    r"""
    CREATE FUNCTION p2p_search_fold(value text) RETURNS text
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path FROM CURRENT AS $$
        SELECT replace(replace(replace(replace(replace(replace(translate(
            regexp_replace(regexp_replace(regexp_replace(normalize(value, NFKD),
                '[\u0300-\u036f\u0483-\u0489\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e4\u06e7\u06e8\u06ea-\u06ed\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]',
                '', 'g'),
                '[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]',
                '', 'g'),
                '[!-/:-@\[-`{-~]', ' ', 'g'),
            U&'ŁłØøĐđĦħ\0131\03C2', U&'LlOoDdHhi\03C3'),
            'Æ', 'AE'), 'æ', 'ae'), 'Œ', 'OE'), 'œ', 'oe'), 'ẞ', 'SS'), 'ß', 'ss')
    $$
    """,
    """
    CREATE FUNCTION messaging_message_search_index() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
    DECLARE
        target bigint;
    BEGIN
        IF TG_TABLE_NAME = 'messaging_attachment' THEN
            target := NEW.message_id;
        ELSE
            target := NEW.id;
        END IF;
        INSERT INTO messaging_messagesearch (message_id, document)
        SELECT m.id, to_tsvector('p2p_search', p2p_search_fold(m.text || ' ' || COALESCE(a.name, '')))
          FROM messaging_message m LEFT JOIN messaging_attachment a ON a.message_id = m.id
         WHERE m.id = target
        ON CONFLICT (message_id) DO UPDATE SET document = EXCLUDED.document;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER messaging_message_search AFTER INSERT OR UPDATE OF text
        ON messaging_message FOR EACH ROW EXECUTE FUNCTION messaging_message_search_index()
    """,
    """
    CREATE TRIGGER messaging_attachment_search AFTER INSERT OR UPDATE OF name
        ON messaging_attachment FOR EACH ROW EXECUTE FUNCTION messaging_message_search_index()
    """,
    """
    INSERT INTO messaging_messagesearch (message_id, document)
    SELECT m.id, to_tsvector('p2p_search', p2p_search_fold(m.text || ' ' || COALESCE(a.name, '')))
      FROM messaging_message m LEFT JOIN messaging_attachment a ON a.message_id = m.id
    """,
    "CREATE INDEX messaging_messagesearch_document ON messaging_messagesearch USING gin (document)",
]
POSTGRES_BACKWARD = [
    "DROP INDEX IF EXISTS messaging_messagesearch_document",
    "DROP TRIGGER IF EXISTS messaging_attachment_search ON messaging_attachment",
    "DROP TRIGGER IF EXISTS messaging_message_search ON messaging_message",
    "DROP FUNCTION IF EXISTS messaging_message_search_index()",
    "DROP FUNCTION IF EXISTS p2p_search_fold(text)",
    "DROP TEXT SEARCH CONFIGURATION IF EXISTS p2p_search",
    "DELETE FROM messaging_messagesearch",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0005_office_administrators_view_attachment"),
    ]

    operations = [
        migrations.CreateModel(
            name="MessageSearch",
            fields=[
                (
                    "message",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="search_entry",
                        serialize=False,
                        to="messaging.message",
                    ),
                ),
                ("document", django.contrib.postgres.search.SearchVectorField()),
            ],
        ),
        migrations.RunPython(
            _run({"sqlite": SQLITE_FORWARD, "postgresql": POSTGRES_FORWARD}),
            _run({"sqlite": SQLITE_BACKWARD, "postgresql": POSTGRES_BACKWARD}),
        ),
    ]
