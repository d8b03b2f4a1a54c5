-- Deterministic data for schema.sql, then indexes, foreign keys and ANALYZE.
--
-- Every value is a function of the row number: a hash of (row number, column)
-- through PostgreSQL's hashint8 (the same on every version and platform), never
-- random(). The same scale gives the same rows, on 16 and on 18.
--
--   psql -v ON_ERROR_STOP=1 -v scale=1 -f schema.sql -f data.sql DBNAME
--
-- Row counts are floor(base * scale), at least 1 (see README.md); scale=1 is
-- about 2.7 million rows. Large projects are rarer than small ones: owners of
-- issues, pipelines and builds are skewed towards low project ids.

\if :{?scale}
\else
\set scale 1
\endif

SET client_min_messages = warning;
SET synchronous_commit = off;
SET maintenance_work_mem = '256MB';

SELECT greatest(1, floor(50000   * :scale))::bigint AS nusers,
       greatest(1, floor(5000    * :scale))::bigint AS ngroups,
       greatest(1, floor(20000   * :scale))::bigint AS nprojects,
       greatest(1, floor(300000  * :scale))::bigint AS nissues,
       greatest(1, floor(150000  * :scale))::bigint AS nmrs,
       greatest(1, floor(250000  * :scale))::bigint AS npipelines,
       greatest(1, floor(600000  * :scale))::bigint AS nnotes
\gset
\set nbuilds '(5 * :npipelines)'
\set nnamespaces '(:ngroups + :nusers)'

-- h(x): a well-mixed integer in [0, 2^32); u(x): uniform in [0, 1);
-- skew(x, n): an id in [1, n], small ids more likely (about 1/sqrt density).
-- Inlined by the planner (immutable one-line SQL functions).
CREATE FUNCTION pg_temp.h(x bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT hashint8(x)::bigint + 2147483648';
CREATE FUNCTION pg_temp.u(x bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT (hashint8(x)::bigint + 2147483648) / 4294967296.0';
CREATE FUNCTION pg_temp.skew(x bigint, n bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT 1 + floor(n * ((hashint8(x)::bigint + 2147483648) / 4294967296.0) ^ 2)::bigint';

-- All timestamps lie in the three years before this instant.
\set epoch '''2026-01-01 00:00:00+00''::timestamptz'

INSERT INTO users (id, username, email, name, state, admin, created_at, last_activity_on)
SELECT i,
       'user' || i,
       'user' || i || '@example.com',
       (ARRAY['Ada','Grace','Linus','Ken','Barbara','Edsger','Donald','Frances'])[1 + pg_temp.h(i * 16 + 1) % 8]
           || ' ' || (ARRAY['Lovelace','Hopper','Torvalds','Thompson','Liskov','Dijkstra','Knuth','Allen'])[1 + pg_temp.h(i * 16 + 2) % 8],
       CASE WHEN pg_temp.h(i * 16 + 3) % 100 < 94 THEN 'active'
            WHEN pg_temp.h(i * 16 + 3) % 100 < 98 THEN 'blocked'
            ELSE 'deactivated' END,
       i % 1000 = 1,
       :epoch - interval '3 years' * pg_temp.u(i * 16 + 4),
       (:epoch - interval '90 days' * pg_temp.u(i * 16 + 5))::date
FROM generate_series(1, :nusers) AS i;

-- Groups are namespaces 1..ngroups (one in ten a subgroup); then one personal
-- namespace per user.
INSERT INTO namespaces (id, name, path, type, owner_id, parent_id, visibility_level, created_at)
SELECT i,
       'Group ' || i,
       'group-' || i,
       'Group',
       NULL,
       CASE WHEN i > 10 AND i % 10 = 0 THEN 1 + pg_temp.h(i * 16 + 1) % (i - 1) END,
       (ARRAY[0, 10, 20])[1 + pg_temp.h(i * 16 + 2) % 3],
       :epoch - interval '3 years' * pg_temp.u(i * 16 + 3)
FROM generate_series(1, :ngroups) AS i
UNION ALL
SELECT :ngroups + i, 'user' || i, 'user' || i, 'User', i, NULL, 20,
       :epoch - interval '3 years' * pg_temp.u(i * 16 + 4)
FROM generate_series(1, :nusers) AS i;

-- Four projects in five live in groups (a few big groups hold many).
INSERT INTO projects (id, namespace_id, creator_id, name, path, description,
                      visibility_level, archived, star_count, created_at, last_activity_at)
SELECT i,
       CASE WHEN pg_temp.h(i * 16 + 1) % 5 < 4 THEN pg_temp.skew(i * 16 + 2, :ngroups)
            ELSE :ngroups + 1 + pg_temp.h(i * 16 + 2) % :nusers END,
       1 + pg_temp.h(i * 16 + 3) % :nusers,
       (ARRAY['api','web','infra','docs','runner','mobile','billing','search'])[1 + pg_temp.h(i * 16 + 4) % 8] || '-' || i,
       'project-' || i,
       'Project number ' || i,
       (ARRAY[0, 10, 20])[1 + pg_temp.h(i * 16 + 5) % 3],
       pg_temp.h(i * 16 + 6) % 20 = 0,
       floor(1000 * pg_temp.u(i * 16 + 7) ^ 8)::int,
       :epoch - interval '3 years' * pg_temp.u(i * 16 + 8),
       :epoch - interval '60 days' * pg_temp.u(i * 16 + 9)
FROM generate_series(1, :nprojects) AS i;

-- Issues: project skewed, iid numbered per project in id order.
INSERT INTO issues (id, project_id, iid, author_id, assignee_id, title, description, state,
                    confidential, weight, created_at, updated_at, closed_at)
SELECT i, project_id, row_number() OVER (PARTITION BY project_id ORDER BY i),
       author_id, assignee_id, title, description, state, confidential, weight,
       created_at, created_at + age, CASE WHEN state = 'closed' THEN created_at + age END
FROM (
    SELECT i,
           pg_temp.skew(i * 16 + 1, :nprojects) AS project_id,
           1 + pg_temp.h(i * 16 + 2) % :nusers AS author_id,
           CASE WHEN pg_temp.h(i * 16 + 3) % 3 > 0 THEN 1 + pg_temp.h(i * 16 + 4) % :nusers END AS assignee_id,
           (ARRAY['Fix','Add','Remove','Improve','Investigate','Refactor','Document','Speed up'])[1 + pg_temp.h(i * 16 + 5) % 8]
               || ' ' || (ARRAY['login','pipeline','search','billing','API','cache','export','webhooks'])[1 + pg_temp.h(i * 16 + 6) % 8]
               || ' (#' || i || ')' AS title,
           repeat('Steps to reproduce, expected and actual behaviour. ', 1 + (pg_temp.h(i * 16 + 7) % 4)::int) AS description,
           CASE WHEN pg_temp.h(i * 16 + 8) % 100 < 30 THEN 'opened' ELSE 'closed' END AS state,
           pg_temp.h(i * 16 + 9) % 50 = 0 AS confidential,
           CASE WHEN pg_temp.h(i * 16 + 10) % 2 = 0 THEN (pg_temp.h(i * 16 + 11) % 10)::smallint END AS weight,
           :epoch - interval '3 years' * pg_temp.u(i * 16 + 12) AS created_at,
           interval '30 days' * pg_temp.u(i * 16 + 13) AS age
    FROM generate_series(1, :nissues) AS i
) AS g;

INSERT INTO ci_pipelines (id, project_id, user_id, ref, sha, source, status,
                          created_at, started_at, finished_at, duration)
SELECT i, project_id, user_id, ref, md5(i::text), source, status,
       created_at, created_at + interval '20 seconds',
       CASE WHEN status IN ('success', 'failed', 'canceled') THEN created_at + interval '20 seconds' + duration * interval '1 second' END,
       CASE WHEN status IN ('success', 'failed', 'canceled') THEN duration END
FROM (
    SELECT i,
           pg_temp.skew(i * 16 + 1, :nprojects) AS project_id,
           1 + pg_temp.h(i * 16 + 2) % :nusers AS user_id,
           CASE WHEN pg_temp.h(i * 16 + 3) % 10 < 6 THEN 'main' ELSE 'feature-' || pg_temp.h(i * 16 + 4) % 500 END AS ref,
           (ARRAY['push','push','push','merge_request_event','merge_request_event','schedule','web'])[1 + pg_temp.h(i * 16 + 5) % 7] AS source,
           CASE WHEN pg_temp.h(i * 16 + 6) % 100 < 80 THEN 'success'
                WHEN pg_temp.h(i * 16 + 6) % 100 < 90 THEN 'failed'
                WHEN pg_temp.h(i * 16 + 6) % 100 < 95 THEN 'canceled'
                WHEN pg_temp.h(i * 16 + 6) % 100 < 98 THEN 'running'
                ELSE 'pending' END AS status,
           :epoch - interval '2 years' * pg_temp.u(i * 16 + 7) AS created_at,
           (60 + pg_temp.h(i * 16 + 8) % 3600)::int AS duration
    FROM generate_series(1, :npipelines) AS i
) AS g;

-- Five builds per pipeline (compile, three test shards, deploy). The project of
-- pipeline p is recomputed from p (same hash as above) instead of joined.
INSERT INTO ci_builds (id, pipeline_id, project_id, user_id, runner_id, name, stage, status,
                       allow_failure, created_at, started_at, finished_at, duration)
SELECT i, p, pg_temp.skew(p * 16 + 1, :nprojects), 1 + pg_temp.h(p * 16 + 2) % :nusers,
       CASE WHEN status NOT IN ('created', 'pending') THEN 1 + (pg_temp.h(i * 16 + 3) % 200)::int END,
       (ARRAY['compile', 'rspec 1/3', 'rspec 2/3', 'rspec 3/3', 'deploy'])[1 + k],
       (ARRAY['build', 'test', 'test', 'test', 'deploy'])[1 + k],
       status,
       k = 4,
       created_at,
       CASE WHEN status NOT IN ('created', 'pending', 'skipped') THEN created_at + interval '30 seconds' END,
       CASE WHEN status IN ('success', 'failed', 'canceled') THEN created_at + interval '30 seconds' + duration * interval '1 second' END,
       CASE WHEN status IN ('success', 'failed', 'canceled') THEN duration END
FROM (
    SELECT i, (i - 1) / 5 + 1 AS p, ((i - 1) % 5)::int AS k,
           CASE WHEN pg_temp.h(i * 16 + 4) % 100 < 78 THEN 'success'
                WHEN pg_temp.h(i * 16 + 4) % 100 < 86 THEN 'failed'
                WHEN pg_temp.h(i * 16 + 4) % 100 < 90 THEN 'canceled'
                WHEN pg_temp.h(i * 16 + 4) % 100 < 94 THEN 'skipped'
                WHEN pg_temp.h(i * 16 + 4) % 100 < 96 THEN 'running'
                WHEN pg_temp.h(i * 16 + 4) % 100 < 98 THEN 'pending'
                ELSE 'created' END AS status,
           :epoch - interval '2 years' * pg_temp.u(((i - 1) / 5 + 1) * 16 + 7) AS created_at,
           (10 + pg_temp.h(i * 16 + 5) % 900)::int AS duration
    FROM generate_series(1, :nbuilds) AS i
) AS g;

INSERT INTO merge_requests (id, project_id, iid, author_id, assignee_id, title, source_branch,
                            target_branch, state, merge_status, head_pipeline_id,
                            created_at, updated_at, merged_at)
SELECT i, project_id, row_number() OVER (PARTITION BY project_id ORDER BY i),
       author_id, assignee_id, title, 'feature-' || i, 'main', state,
       CASE WHEN state = 'opened' THEN 'can_be_merged' ELSE 'unchecked' END,
       head_pipeline_id, created_at, created_at + age,
       CASE WHEN state = 'merged' THEN created_at + age END
FROM (
    SELECT i,
           pg_temp.skew(i * 16 + 1, :nprojects) AS project_id,
           1 + pg_temp.h(i * 16 + 2) % :nusers AS author_id,
           CASE WHEN pg_temp.h(i * 16 + 3) % 5 > 0 THEN 1 + pg_temp.h(i * 16 + 4) % :nusers END AS assignee_id,
           (ARRAY['Draft: ','','','Resolve '])[1 + pg_temp.h(i * 16 + 5) % 4]
               || (ARRAY['refactor','upgrade','fix','feature','cleanup','perf'])[1 + pg_temp.h(i * 16 + 6) % 6]
               || ' !' || i AS title,
           CASE WHEN pg_temp.h(i * 16 + 7) % 100 < 20 THEN 'opened'
                WHEN pg_temp.h(i * 16 + 7) % 100 < 85 THEN 'merged'
                ELSE 'closed' END AS state,
           CASE WHEN pg_temp.h(i * 16 + 8) % 10 > 0 THEN 1 + pg_temp.h(i * 16 + 9) % :npipelines END AS head_pipeline_id,
           :epoch - interval '3 years' * pg_temp.u(i * 16 + 10) AS created_at,
           interval '14 days' * pg_temp.u(i * 16 + 11) AS age
    FROM generate_series(1, :nmrs) AS i
) AS g;

-- Notes: three in five on issues, the rest on merge requests; a note's project is
-- its noteable's (issues and merge requests draw their project with the same
-- hash of their id, so it is recomputed instead of joined, as for builds).
INSERT INTO notes (id, project_id, noteable_type, noteable_id, author_id, note, system,
                   created_at, updated_at)
SELECT i,
       pg_temp.skew(noteable_id * 16 + 1, :nprojects),
       CASE WHEN on_issue THEN 'Issue' ELSE 'MergeRequest' END,
       noteable_id, author_id, note, system, created_at, created_at
FROM (
    SELECT i,
           pg_temp.h(i * 16 + 1) % 5 < 3 AS on_issue,
           CASE WHEN pg_temp.h(i * 16 + 1) % 5 < 3 THEN pg_temp.skew(i * 16 + 2, :nissues)
                ELSE pg_temp.skew(i * 16 + 2, :nmrs) END AS noteable_id,
           1 + pg_temp.h(i * 16 + 3) % :nusers AS author_id,
           (ARRAY['LGTM', 'Can you add a test?', 'Rebased on main.', 'Thanks, merging.',
                  'I can reproduce this on the latest version.', 'See the failing job log.'])[1 + pg_temp.h(i * 16 + 4) % 6] AS note,
           pg_temp.h(i * 16 + 5) % 4 = 0 AS system,
           :epoch - interval '3 years' * pg_temp.u(i * 16 + 6) AS created_at
    FROM generate_series(1, :nnotes) AS i
) AS g;

-- The last iid given per project and kind (0 issues, 1 merge requests).
INSERT INTO internal_ids (usage, project_id, last_value)
SELECT kind.usage, p.id, coalesce(m.last_value, 0)
FROM projects AS p
CROSS JOIN (VALUES (0::smallint), (1::smallint)) AS kind (usage)
LEFT JOIN (
    SELECT 0 AS usage, project_id, max(iid) AS last_value FROM issues GROUP BY project_id
    UNION ALL
    SELECT 1, project_id, max(iid) FROM merge_requests GROUP BY project_id
) AS m ON m.usage = kind.usage AND m.project_id = p.id
ORDER BY kind.usage, p.id;

-- Identity columns continue after the generated ids, so the client's inserts
-- never collide with them.
SELECT setval(pg_get_serial_sequence(t, 'id'), n)
FROM (VALUES ('users', :nusers), ('namespaces', :nnamespaces), ('projects', :nprojects),
             ('issues', :nissues), ('merge_requests', :nmrs), ('ci_pipelines', :npipelines),
             ('ci_builds', :nbuilds), ('notes', :nnotes),
             ('internal_ids', 2 * :nprojects)) AS v (t, n)
\g /dev/null
