-- Quiet hours, the frequency cap and the promoter's reminder (issue 21). A message's timing says whether it waits
-- for the recipient's send window; a held message records until when and why, for its
-- timeline. `sent_at` is when a send was handed to Meta, which the weekly cap of marketing
-- templates counts. A number's time zone comes from its HubSpot contact (hs_timezone).
ALTER TABLE messages ADD COLUMN timing TEXT NOT NULL DEFAULT 'immediately';
ALTER TABLE messages ADD COLUMN held_until BIGINT;
ALTER TABLE messages ADD COLUMN held_reason TEXT;
ALTER TABLE messages ADD COLUMN sent_at BIGINT;
UPDATE messages SET sent_at = updated_at WHERE wamid IS NOT NULL;
CREATE INDEX messages_recipient_sent ON messages (to_phone, sent_at) WHERE sent_at IS NOT NULL;
ALTER TABLE wa_users ADD COLUMN time_zone TEXT;
-- When the promoter's reminder was queued for an invite (the funnel counts what came after).
ALTER TABLE invites ADD COLUMN reminded_at BIGINT;
