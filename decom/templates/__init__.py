"""Text templates shipped with decom (string.Template, $placeholders): notice.txt for the handover's notices."""
