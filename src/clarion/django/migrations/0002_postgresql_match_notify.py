"""PostgreSQL only: ``clarion_match`` evaluates listener filters in the database, and a trigger
NOTIFYs ``clarion_webhooks`` when events commit, so idle workers wake without polling.

The function follows ``clarion.django.match`` exactly (JSON equality, code-point string order,
type mismatches are false); other databases skip this migration: SQLite gets the same function
from Python at connection time, others filter in Python.
"""

from django.db import migrations

MATCH_SQL = r"""
CREATE OR REPLACE FUNCTION clarion_match_value(spec jsonb, present boolean, val jsonb)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  op text := spec->>'op';
  item jsonb;
  s text;
  p text;
BEGIN
  IF op = 'any' THEN RETURN true; END IF;
  IF op = 'exists' THEN RETURN present = coalesce((spec->'value')::text::boolean, true); END IF;
  IF op = 'and' THEN
    FOR item IN SELECT * FROM jsonb_array_elements(spec->'args') LOOP
      IF NOT clarion_match_value(item, present, val) THEN RETURN false; END IF;
    END LOOP;
    RETURN true;
  END IF;
  IF op = 'or' THEN
    FOR item IN SELECT * FROM jsonb_array_elements(spec->'args') LOOP
      IF clarion_match_value(item, present, val) THEN RETURN true; END IF;
    END LOOP;
    RETURN false;
  END IF;
  IF op = 'not' THEN RETURN NOT clarion_match_value(spec->'arg', present, val); END IF;
  IF NOT present THEN RETURN false; END IF;
  IF op = 'is' THEN RETURN val = spec->'value'; END IF;
  IF op = 'in' THEN
    RETURN EXISTS (SELECT 1 FROM jsonb_array_elements(spec->'values') e WHERE e = val);
  END IF;
  IF op = 'fields' THEN
    RETURN jsonb_typeof(val) = 'object' AND clarion_match(spec->'match', val);
  END IF;
  IF op = 'contains' THEN
    IF jsonb_typeof(val) = 'string' THEN
      RETURN jsonb_typeof(spec->'value') = 'string'
         AND strpos(val #>> '{}', spec->>'value') > 0;
    ELSIF jsonb_typeof(val) = 'array' THEN
      RETURN EXISTS (SELECT 1 FROM jsonb_array_elements(val) e WHERE e = spec->'value');
    END IF;
    RETURN false;
  END IF;
  IF op IN ('startswith', 'endswith', 'like') THEN
    IF jsonb_typeof(val) <> 'string' THEN RETURN false; END IF;
    s := val #>> '{}';
    p := spec->>'value';
    IF op = 'startswith' THEN RETURN left(s, length(p)) = p; END IF;
    IF op = 'endswith' THEN RETURN length(p) = 0 OR right(s, length(p)) = p; END IF;
    -- Like() refuses patterns the two engines read differently; a bad one that slips in
    -- (written to the table by hand) matches nothing instead of failing the whole fan-out.
    BEGIN
      RETURN s ~ p;
    EXCEPTION WHEN invalid_regular_expression THEN
      RETURN false;
    END;
  END IF;
  IF op IN ('gt', 'gte', 'lt', 'lte') THEN
    IF jsonb_typeof(val) = 'number' AND jsonb_typeof(spec->'value') = 'number' THEN
      RETURN CASE op
        WHEN 'gt' THEN val::text::numeric > (spec->'value')::text::numeric
        WHEN 'gte' THEN val::text::numeric >= (spec->'value')::text::numeric
        WHEN 'lt' THEN val::text::numeric < (spec->'value')::text::numeric
        ELSE val::text::numeric <= (spec->'value')::text::numeric END;
    ELSIF jsonb_typeof(val) = 'string' AND jsonb_typeof(spec->'value') = 'string' THEN
      s := val #>> '{}';
      p := spec->>'value';
      RETURN CASE op
        WHEN 'gt' THEN s COLLATE "C" > p COLLATE "C"
        WHEN 'gte' THEN s COLLATE "C" >= p COLLATE "C"
        WHEN 'lt' THEN s COLLATE "C" < p COLLATE "C"
        ELSE s COLLATE "C" <= p COLLATE "C" END;
    END IF;
    RETURN false;
  END IF;
  RETURN false;
END $$;

CREATE OR REPLACE FUNCTION clarion_match(spec jsonb, data jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT NOT EXISTS (
    SELECT 1 FROM jsonb_each(coalesce(spec, '{}'::jsonb)) AS m(field, s)
    WHERE NOT clarion_match_value(m.s, data ? m.field, data -> m.field)
  )
$$;

CREATE OR REPLACE FUNCTION clarion_event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('clarion_webhooks', '');
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS clarion_event_notify ON clarion_event;
CREATE TRIGGER clarion_event_notify AFTER INSERT ON clarion_event
  FOR EACH STATEMENT EXECUTE FUNCTION clarion_event_notify();
"""

DROP_SQL = """
DROP TRIGGER IF EXISTS clarion_event_notify ON clarion_event;
DROP FUNCTION IF EXISTS clarion_event_notify();
DROP FUNCTION IF EXISTS clarion_match(jsonb, jsonb);
DROP FUNCTION IF EXISTS clarion_match_value(jsonb, boolean, jsonb);
"""


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(MATCH_SQL)


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL)


class Migration(migrations.Migration):
    dependencies = [("clarion", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
