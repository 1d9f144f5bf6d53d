-- The resourceVersion of the WebhookDelivery a record was taken from: a delivery may leave etcd
-- only when the store holds it at exactly the version etcd has (Store.Archived), so one changed
-- since it was archived (a manual retry, a label) is archived again first.

-- +goose Up
ALTER TABLE records ADD COLUMN resource_version TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE records DROP COLUMN resource_version;
