-- Indexes, foreign keys and statistics, after data.sql has loaded the rows.
--
-- Worth knowing for the upgrade rehearsal: ci_builds has no index leading with
-- project_id. "Builds of a project" can only use ci_builds (status, project_id,
-- created_at), whose leading column has seven values: PostgreSQL 18 skip-scans it
-- (one descent per status), 16 can only read all of it or the whole table.
-- Its INCLUDE (name, stage) serves job lists without heap visits, and makes it
-- wide enough that 16 prefers the table: without it, 16 full-scans this index,
-- with the same plan text as 18's skip scan, and the plan change disappears.

SET client_min_messages = warning;
SET maintenance_work_mem = '256MB';

CREATE UNIQUE INDEX index_users_on_username ON users (username);
CREATE UNIQUE INDEX index_users_on_email ON users (email);

CREATE UNIQUE INDEX index_namespaces_on_path ON namespaces (path);
CREATE INDEX index_namespaces_on_owner_id ON namespaces (owner_id);
CREATE INDEX index_namespaces_on_parent_id ON namespaces (parent_id);

CREATE UNIQUE INDEX index_projects_on_namespace_id_and_path ON projects (namespace_id, path);
CREATE INDEX index_projects_on_creator_id ON projects (creator_id);
CREATE INDEX index_projects_on_last_activity_at ON projects (last_activity_at);

CREATE UNIQUE INDEX index_internal_ids_on_usage_and_project_id ON internal_ids (usage, project_id);

CREATE UNIQUE INDEX index_issues_on_project_id_and_iid ON issues (project_id, iid);
CREATE INDEX index_issues_on_project_id_and_state_and_created_at
    ON issues (project_id, state, created_at, id);
CREATE INDEX index_issues_on_author_id ON issues (author_id);
CREATE INDEX index_issues_on_assignee_id ON issues (assignee_id);

CREATE UNIQUE INDEX index_merge_requests_on_project_id_and_iid ON merge_requests (project_id, iid);
CREATE INDEX index_merge_requests_on_assignee_id_and_state_and_updated_at
    ON merge_requests (assignee_id, state, updated_at);
CREATE INDEX index_merge_requests_on_author_id ON merge_requests (author_id);

CREATE INDEX index_ci_pipelines_on_project_id_and_ref_and_id ON ci_pipelines (project_id, ref, id);
CREATE INDEX index_ci_pipelines_on_user_id ON ci_pipelines (user_id);

CREATE INDEX index_ci_builds_on_pipeline_id ON ci_builds (pipeline_id);
CREATE INDEX index_ci_builds_on_status_and_project_id_and_created_at
    ON ci_builds (status, project_id, created_at) INCLUDE (name, stage);
CREATE INDEX index_ci_builds_on_runner_id ON ci_builds (runner_id);

CREATE INDEX index_notes_on_noteable_id_and_noteable_type ON notes (noteable_id, noteable_type);
CREATE INDEX index_notes_on_author_id ON notes (author_id);

ALTER TABLE namespaces ADD CONSTRAINT fk_namespaces_owner FOREIGN KEY (owner_id) REFERENCES users;
ALTER TABLE projects ADD CONSTRAINT fk_projects_namespace FOREIGN KEY (namespace_id) REFERENCES namespaces;
ALTER TABLE issues ADD CONSTRAINT fk_issues_project FOREIGN KEY (project_id) REFERENCES projects ON DELETE CASCADE;
ALTER TABLE merge_requests ADD CONSTRAINT fk_merge_requests_project FOREIGN KEY (project_id) REFERENCES projects ON DELETE CASCADE;
ALTER TABLE ci_pipelines ADD CONSTRAINT fk_ci_pipelines_project FOREIGN KEY (project_id) REFERENCES projects ON DELETE CASCADE;
ALTER TABLE ci_builds ADD CONSTRAINT fk_ci_builds_pipeline FOREIGN KEY (pipeline_id) REFERENCES ci_pipelines ON DELETE CASCADE;

VACUUM (ANALYZE);
