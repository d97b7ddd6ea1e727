"""The statements of the request paths (/propose, /report), built once: on SQLite, building and
hashing a statement costs more than running it."""

from sqlalchemy import bindparam, func, insert, select, update

from teacher_service.serving.store.tables import Curriculum, Proposal

# Every column but the checkpoint, which is read only when a cached teacher is stale.
CURRICULUM_COLUMNS = (
    Curriculum.id,
    Curriculum.name,
    Curriculum.spec,
    Curriculum.teacher_version,
    Curriculum.teacher_updates,
    Curriculum.created_at,
)

CURRICULUM_BY_NAME = select(*CURRICULUM_COLUMNS).where(Curriculum.name == bindparam("name"))
LAST_REPORT_OF_STUDENT = (
    select(Proposal.task_index, Proposal.task_values, Proposal.signals)
    .where(
        Proposal.curriculum_id == bindparam("curriculum_id"),
        Proposal.student_id == bindparam("student_id"),
        Proposal.reported_at.is_not(None),
    )
    .order_by(Proposal.seq.desc())
    .limit(1)
)
INSERT_PROPOSAL = insert(Proposal.__table__)
LOCK_CURRICULUM_OF_PROPOSAL = (
    select(*CURRICULUM_COLUMNS)
    .where(
        Curriculum.id
        == select(Proposal.curriculum_id).where(Proposal.proposal_id == bindparam("proposal_id")).scalar_subquery()
    )
    .with_for_update()
)
PROPOSAL_BY_ID = select(Proposal.__table__).where(Proposal.proposal_id == bindparam("proposal_id"))
MARK_REPORTED = (
    update(Proposal.__table__)
    .where(Proposal.seq == bindparam("proposal_seq"))
    .values(reported_at=bindparam("reported_at"), signals=bindparam("signals"), reward=bindparam("reward"),
            trajectory=bindparam("trajectory"), ack=bindparam("ack"))
)
READY_FOR_UPDATE = (
    Proposal.curriculum_id == bindparam("curriculum_id"),
    Proposal.trajectory.is_not(None),
    Proposal.consumed_version.is_(None),
)
COUNT_OTHERS_READY = select(func.count()).where(*READY_FOR_UPDATE, Proposal.seq != bindparam("seq"))
READY_ROWS = select(Proposal.__table__).where(*READY_FOR_UPDATE).order_by(Proposal.seq)
OPEN_EPISODES_OF_STUDENT = select(Proposal.seq).where(
    Proposal.curriculum_id == bindparam("curriculum_id"),
    Proposal.student_id == bindparam("student_id"),
    Proposal.reward.is_not(None),
    Proposal.trajectory.is_(None),
    Proposal.seq != bindparam("seq"),
)
